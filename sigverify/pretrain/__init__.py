"""Pretraining the backbone without ImageNet: SimCLR and MoCo v2 on unlabelled signatures, and triplet pretraining on
synthetic writers (`run`), their models (`models`), image sources (`sources`) and the comparison of starts
(`compare`). The losses are `sigverify.losses.NTXentLoss` and `MoCoLoss`; the augmentations `sigverify.data.augment`;
SimCLR's cross-replica gather is the TensorFlow engine's (`sigverify.training.tf_engine.CrossReplicaViews`)."""
