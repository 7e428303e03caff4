"""`mine`: find a patch trigger as a pattern pasted into many unrelated images, with no backdoored encoder.

A patch attack pastes one small image into tens or thousands of photos. Neither its position nor its
hosts repeat, but its pixels do. The steps, one per module:

1. `descriptors`: sub-pixel corners of every image, each described by its whitened colour patch;
2. `matching`: each keypoint's nearest keypoints in other images (faiss);
3. `agreement`: each correspondence checked pixel by pixel, scored by how firmly the agreeing
   region pins the alignment down (flat and one-directional agreement score 0);
4. `candidates`: groups of images tied by triangles of strong agreements (chance agreements
   rarely close a triangle; the copies of one patch all agree with each other);
   `plates`: groups of images sharing a smooth region of one size and one colour (plates,
   gradients: triggers with no corners of their own);
5. `extraction`: the block a group's hosts share, cut out as the pattern's template;
6. `scoring`: every image matched against each template, hosts and look-alikes decided by a null
   measured on the scan itself;
`detector` chains them; `edits` holds the pixel helpers the steps share.
"""

from ssl_guard.detect.mine.detector import MineConfig, detect_mine

__all__ = ["MineConfig", "detect_mine"]
