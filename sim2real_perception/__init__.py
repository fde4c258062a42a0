"""Monocular depth and semantic segmentation from a sim2real twin-VAE.

The runtime package: network, exported-model I/O, predictors and the ROS 2 node.
It never imports ``training`` so a deployed robot needs only runtime dependencies.
"""

__version__ = '0.1.0'
