"""The work of each driver stage, one module per stage (data, train, export, compnn, analyses, report).

`experiments.run` decides which stages run and caches them (experiments.stages); every function here
takes its stage directory first and writes only there (the report stage also writes the user-facing
files into the run directory).
"""
