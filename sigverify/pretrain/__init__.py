"""Pretraining the backbone without ImageNet: SimCLR and MoCo v2 on unlabelled signatures, and triplet pretraining on
synthetic writers (`run`), their models (`models`), image sources (`sources`) and SimCLR's cross-replica gather
(`distributed`). The losses are `sigverify.losses.NTXentLoss` and `MoCoLoss`; the augmentations `sigverify.data.augment`."""
