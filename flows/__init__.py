from components import env_defaults

# Prefect's server and MLflow send usage telemetry by default: from an offline machine every flow run then
# logs a failed send (and Prefect's heartbeat can hit "database is locked" on the local SQLite). Opt-in here,
# as in components/env_defaults.py; set before Prefect or MLflow is imported, and a user's value wins.
env_defaults.apply({"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true"})
