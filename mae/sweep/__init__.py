"""Studies: a YAML file (`spec`) at a scale (`scale`) becomes deduplicated runs (`plan`) that
`launch` sends to submitit; `cli` is `studies/run.py`."""
