"""``ldm serve``: a local web page over one run, to try its conditions by hand.

One model is loaded once (``ldmcore.sample.load_for_sampling``); requests are checked as the
command line checks them and queued, so one sampling runs at a time; each result is an
``ldm sample`` output folder under ``RUN/samples/serve/`` with the command that reproduces it.

::

    service.py   the loaded run, its queue and the page's description of it
    web_request.py   what the page sends -> the words of ``ldm sample`` and the files it needs
    uploads.py   images the page sends (PNG bytes or painted pixels), checked and saved
    jobs.py      the queue: one worker thread, progress, bounded waiting room
    app.py       the HTTP routes (FastAPI) and the static page
    options.py   its options (types, defaults, ``ldm serve --help``)
    command.py   ``ldm serve run=RUN host=127.0.0.1 port=7860 ...``
    static/      the page: plain HTML, CSS and JavaScript, nothing fetched from elsewhere
"""
