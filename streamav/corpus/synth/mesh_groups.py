"""Named groups of FaceMesh points (478-point mesh with iris), each in drawing order.

"right"/"left" are the subject's, as in MediaPipe: the right eye is on the image's left.
"""

from __future__ import annotations

LIPS_OUTER_UPPER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291)
LIPS_OUTER_LOWER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291)
LIPS_INNER_UPPER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308)
LIPS_INNER_LOWER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308)
MOUTH_CORNERS = (61, 291, 78, 308)

RIGHT_EYE_UPPER = (33, 246, 161, 160, 159, 158, 157, 173, 133)
RIGHT_EYE_LOWER = (33, 7, 163, 144, 145, 153, 154, 155, 133)
LEFT_EYE_UPPER = (263, 466, 388, 387, 386, 385, 384, 398, 362)
LEFT_EYE_LOWER = (263, 249, 390, 373, 374, 380, 381, 382, 362)
RIGHT_IRIS = (468, 469, 470, 471, 472)  # centre first, then the ring
LEFT_IRIS = (473, 474, 475, 476, 477)

RIGHT_BROW_UPPER = (70, 63, 105, 66, 107)  # outer → inner
RIGHT_BROW_LOWER = (46, 53, 52, 65, 55)
LEFT_BROW_UPPER = (300, 293, 334, 296, 336)
LEFT_BROW_LOWER = (276, 283, 282, 295, 285)

FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378,
             400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54,
             103, 67, 109)
NOSE_ALAE = (98, 97, 2, 326, 327, 64, 294, 48, 278, 115, 344, 129, 358, 102, 331, 240, 460,
             75, 305, 60, 290, 99, 328, 79, 309, 166, 392, 219, 439, 218, 438, 237, 457,
             20, 250, 238, 458, 241, 461, 242, 462, 141, 370, 94, 19, 125, 354)
NOSTRILS = ((79, 166, 60, 20, 238, 241, 75), (309, 392, 290, 250, 458, 461, 305))
NOSE_TIP = 1
CHIN = 152

LIPS = tuple(sorted(set(LIPS_OUTER_UPPER + LIPS_OUTER_LOWER + LIPS_INNER_UPPER
                        + LIPS_INNER_LOWER)))
UPPER_LIP = tuple(sorted(set(LIPS_OUTER_UPPER[1:-1] + LIPS_INNER_UPPER[1:-1])))
LOWER_LIP = tuple(sorted(set(LIPS_OUTER_LOWER[1:-1] + LIPS_INNER_LOWER[1:-1])))
EYE_UPPER = (RIGHT_EYE_UPPER, LEFT_EYE_UPPER)
EYE_LOWER = (RIGHT_EYE_LOWER, LEFT_EYE_LOWER)
IRISES = (RIGHT_IRIS, LEFT_IRIS)
BROWS = tuple(sorted(set(RIGHT_BROW_UPPER + RIGHT_BROW_LOWER + LEFT_BROW_UPPER
                         + LEFT_BROW_LOWER)))


def loop(upper: tuple[int, ...], lower: tuple[int, ...]) -> tuple[int, ...]:
    """A closed contour: `upper` left to right, then `lower` back (shared end points once)."""
    return upper + tuple(reversed(lower[1:-1]))
