"""The results web page (``vectorai-results serve``): runs, a predictions grid, confusion
matrices, dead letters and corrections, and the export of corrections back into training.

``queries`` reads and writes the tables, ``images`` re-encodes stored payloads as PNG
thumbnails, ``charts`` draws SVG, ``app`` is the Flask application with its ``templates/`` and
``static/`` beside it (``views`` answers its routes, ``params`` checks their parameters, ``guard``
the Host, the login's redirect and its throttle, ``settings`` is what it is given), ``server``
runs it (cheroot, TLS), and ``dataset`` turns reviews into training data.
Nothing here imports Luigi.
"""
