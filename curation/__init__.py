"""curate's library: jobs (one module per command family) over one package per external system (scoring, Label
Studio, training, simulation, integrations) and selection over stored scores. The README's Development section
maps it."""
