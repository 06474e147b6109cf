"""Recommendations: training, evaluation and (to come) the lake pipeline around `p13n.models.recommenders`."""
