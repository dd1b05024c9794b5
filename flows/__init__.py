from components import env_defaults

# Prefect's server and MLflow send usage telemetry by default: from an offline machine every flow run then
# logs a failed send (and Prefect's heartbeat can hit "database is locked" on the local SQLite). Opt-in here,
# as in components/env_defaults.py; set before Prefect or MLflow is imported, and a user's value wins.
# A command without a Prefect server (promote, retrain on one machine) starts a temporary one and gives it 20 s
# by default: on a busy 2-core machine its start (SQLite migrations, uvicorn) took longer and `faceforge promote`
# failed with "Timed out while attempting to connect to ephemeral Prefect API server" (twice in the full suite).
env_defaults.apply({"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
                    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90"})
