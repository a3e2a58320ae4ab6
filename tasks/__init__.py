"""Luigi tasks: ``luigi --module tasks PredictTask``. Thin wiring around ``vectorai``."""

from tasks.common import install_error_reporting
from tasks.data import DownloadData, SplitData
from tasks.model import ExportOnnx, PromoteModel, TrainModel
from tasks.register import PromoteRegisteredModel, RegisterModel
from tasks.review import ReviewedData
from tasks.stream import PredictTask, StreamData

install_error_reporting()

__all__ = ["DownloadData", "SplitData", "TrainModel", "ExportOnnx", "PromoteModel", "StreamData", "PredictTask",
           "ReviewedData", "RegisterModel", "PromoteRegisteredModel"]
