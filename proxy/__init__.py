"""The proxy: serves /orchestrator/{name}/{path} from a registry (standalone or cluster)."""
