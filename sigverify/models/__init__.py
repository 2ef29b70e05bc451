"""Models, one module each: `backbones` (keras.applications backbones, input scaling, cut layers), `weights` (where a
backbone's weights come from), `embedding` (the architectures), `zoo` (the post's models and its figures), `siamese`
(pairs through one tower), `inference` (embeddings of a set of signatures)."""
