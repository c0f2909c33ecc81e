"""Rollouts: a challenger beside the champion, compared on live traffic with decisions valid at every look."""
