"""Evaluation: score models on a test set, one file per task kind.

    from modelmill.evaluate import score_labels, classification_metrics, format_metrics
"""

from modelmill.evaluate.classification import (classification_metrics, format_metrics, generate_labels,
                                               parse_label, score_labels)

__all__ = ["classification_metrics", "format_metrics", "generate_labels", "parse_label", "score_labels"]
