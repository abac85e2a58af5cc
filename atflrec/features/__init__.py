"""Audio features: Kaldi Mel filter banks for several Mel-bin counts, in a Parquet feature store.

``pipeline.build_feature_store`` builds the store with Ray Data; ``store.load_features`` and
``store.read_feature_table`` read it; ``clip.featurise_file`` featurises one clip the same way
(for serving). ``audio`` decodes and prepares clips, ``fbank`` computes the features.
"""
