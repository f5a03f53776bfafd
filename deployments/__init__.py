"""drbook's Prefect deployments (installed as drbook.deployments): prefect.yaml, a
deployment per lifecycle stage. Register them with `drbook deploy` (drbook.deploy)."""
