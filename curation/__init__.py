"""curate's pipeline and adapters: pools, model runtime, batched scoring, selection, Label Studio, training."""
