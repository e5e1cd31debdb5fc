"""Using a trained model: predict (every runtime, whole field of view, NIfTI or DICOM-SEG out),
evaluate (Dice, VOE, HD95 on each case's original grid) and the export runtimes."""
