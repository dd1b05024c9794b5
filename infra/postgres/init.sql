-- One Postgres, three databases: MLflow's backend store, its basic-auth users, and Prefect's API database.
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
CREATE DATABASE prefect;
