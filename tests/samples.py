"""Sample inputs shared by unit and integration tests."""

# RPI's documented Post Execution body (reference/redpoint-rpi.md §2), the abbreviated values filled in.
RPI_POST_EXECUTION = {
    "interactionID": "7d200b95-5c2e-4e8a-9f4b-1a2b3c4d5e6f",
    "workflowAssociationID": "a1fa2a17-3b4c-4d5e-8f90-0a1b2c3d4e5f",
    "workflowAssociationInstanceID": "8828",
    "dataflowID": "24951",
    "offerName": "Spring Welcome",
    "channelName": "Braze Onboarding and Upsert",
    "activityName": "Braze Upsert",
    "channelOfferName": "Spring Welcome",
    "channelExecutionID": "5719",
    "clientID": "73d74e87-1f2a-4b3c-9d8e-7f6a5b4c3d2e",
}
