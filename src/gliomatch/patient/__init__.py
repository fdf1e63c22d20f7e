"""A patient's side of the method: inputs and label conventions, registration to the atlas,
the pipeline (to atlas space, search, back to the patient), cohorts, reports, synthetic
patients."""
