"""sigverify: deep metric learning for offline handwritten signature verification.

The package follows the pipeline: data -> preprocess -> models -> losses -> train -> evaluate -> report.
"""

__version__ = "0.1.0"

import os as _os

# TensorFlow's C++ start-up chatter (oneDNN, CUDA probing) buries the run's own output; errors still show.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
