from components import env_defaults

env_defaults.apply()  # before any import of Ray: it reads its switches when first imported
