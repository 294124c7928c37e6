"""The only package that speaks SQL: items, scores, embeddings, selections (SQLite or Postgres)."""
