"""`additive`: find a global trigger (a blend, CTRL) as one signal added to many unrelated images.

A blended or frequency trigger has no box to cut out: it is spread over the whole image, at the
same place in every poison. The steps, one per module:

1. `features`: each image's band-pass residuals per octave, divided by their local energy, so that
   a signal shared across photos correlates and the photos' own content does not;
2. `groups`: nearest images (faiss), seed groups ranked by their triangles, grown along the
   direction their members share, and kept when their projections stand out of a mirrored null
   measured on the scan itself;
`detector` chains them and scores every image on each accepted pattern.
"""

from ssl_guard.detect.additive.detector import AdditiveConfig, detect_additive

__all__ = ["AdditiveConfig", "detect_additive"]
