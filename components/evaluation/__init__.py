"""Face verification and identification metrics: IJB-B/C 1:1 and 1:N, LFW-style ``.bin`` sets, ROC.

Modules are imported where they are used: scoring precomputed IJB-C features needs neither torch nor OpenCV.
"""
