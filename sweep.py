"""trtsweep entry point: ``python sweep.py -m engine=tf,tflite precision=fp32,int8``.

The Hydra app lives in the package (``trtsweep.entry``, configs in ``src/trtsweep/conf``), so an
installed wheel runs the same app as ``trtsweep sweep -m engine=tf,tflite precision=fp32,int8``."""

from trtsweep.entry import main

if __name__ == "__main__":
    main()
