"""Thin utilities every stage imports: paths, the model registry, one chat interface, the console.

Nothing here imports a stage, and nothing here imports torch at import time, so `import shared`
stays fast for command-line tools that only need a path or a table.
"""
