"""Pool-based simulations: learning curves of strategies against random on a labeled dataset."""
