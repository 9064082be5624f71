"""Video and streams: an application over the runtime library, as jetson-inference's ``segnet.py`` is.

Sources (files, cameras, RTSP/HTTP streams, frame folders), sinks (video files, frame folders, an MJPEG
preview), the rendering of each frame and the loop that runs a ``Segmenter`` over a source into sinks.
"""

from .loop import read_video, segment_stream, write_video

__all__ = ["segment_stream", "read_video", "write_video"]
