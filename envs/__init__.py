"""Gymnasium environments shipped with rlhf. Importing this package registers them."""
