"""The faces stage: MTCNN face detection, the keep/crop policy, and its Ray Data actor pool.

Modules, in data-flow order: :mod:`~pipeline.faces.detector` (``FaceDetector``: decode → detect → policy → row,
plain Python), :mod:`~pipeline.faces.crop` (square crops, eye alignment), :mod:`~pipeline.faces.stage`
(``detect_faces`` for Ray Data, ``run`` for the stage), :mod:`~pipeline.faces.folder` (``crop_folder`` for the
``faces`` command). Image decoding lives in :mod:`pipeline.imaging`, shared with other stages.
"""

from pipeline.faces.detector import FaceDetector, reason_code
from pipeline.faces.folder import crop_folder
from pipeline.faces.stage import FaceActor, detect_faces, run

__all__ = ["FaceActor", "FaceDetector", "crop_folder", "detect_faces", "reason_code", "run"]
