"""Training methods, one file each (sft.py, ...), run in a subprocess by launcher.py.

    modelmill train --base smollm2-135m-instruct --data reviews-train --name reviews-lora
"""
