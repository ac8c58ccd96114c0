"""Verifiers: rule rewards and filters for generated samples.

A library usable on its own: it never imports ``factory``. Each module is a
pure function (or a small pool of workers) over strings, so it can be reused in
an RL loop, an eval harness or a notebook. ``verifiers.scoring`` holds the one
scoring function per task type that the filter, ``factory eval`` and
``factory verify`` share.
"""
