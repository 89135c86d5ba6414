"""The two models: the WaveNet teacher and the Gaussian IAF student."""

from wavegen.models.student import Student
from wavegen.models.teacher import Teacher

__all__ = ["Student", "Teacher"]
