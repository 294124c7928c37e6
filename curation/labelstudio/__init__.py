"""Everything that talks to Label Studio: the client, task and prediction formats, the ranking tags, the project,
publishing a ranking, push and pull. The only package that imports the Label Studio SDK."""
