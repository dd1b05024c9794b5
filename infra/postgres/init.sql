-- One Postgres, two databases: MLflow's backend store and Prefect's API database.
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
