"""factory: a data-generation and distillation factory for R1-style reasoning data.

Data flows one way: sources → generate → store → filter → mix → distill →
evaluate → cards. Each stage is one module with one public entry point.
"""

__version__ = "0.1.0"
