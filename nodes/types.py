"""Socket types private to the pack."""

from comfy_api.latest import io

# A learned or loaded concept (dti.concept.Concept), passed between DTI nodes.
DTIConcept = io.Custom("DTI_CONCEPT")
