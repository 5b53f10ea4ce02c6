"""Datasets shipped with edgepipe: one directory per dataset (raw npz splits, photos, vocabularies) -> read by
pipeline/data.py. A package only so that an installed edgepipe carries them beside `pipeline` and `targets`."""
