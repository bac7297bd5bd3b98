"""Evaluation: scoring a policy on held-out problems (``policy``), pass@k and the statistics of
comparisons (``stats``), and the run-folder schema every reader and writer goes through
(``results``)."""
