-- One Postgres, four databases: MLflow's backend store, its basic-auth users, Prefect's API database and the
-- gallery of enrolled people (faceforge gallery; its tables are created on first use).
CREATE DATABASE mlflow;
CREATE DATABASE mlflow_auth;
CREATE DATABASE prefect;
CREATE DATABASE gallery;
