"""Scale-out: several process servers (Prefect workers, each polling its own work queue), the
machines each serves, and taking a lost one's machines over. Prefect is the engine: drbook
only decides which queue a machine's cycles go to."""
