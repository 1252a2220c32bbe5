"""OFREP (OpenFeature Remote Evaluation Protocol) endpoints. Being written: issue 4."""
