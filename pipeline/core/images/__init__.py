"""Pixels: safe decoding (pixel caps before decode), crop geometry, the Flickr placeholder check, and
grouping photos into near-copies."""
