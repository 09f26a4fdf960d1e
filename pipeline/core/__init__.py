"""The shared core: everything two stages (or a stage and a command) both need lives here, once.

Modules import nothing heavy at package import time (torch only under :mod:`pipeline.core.learn`), so a
stage's start-up pays only for what it uses.
"""
