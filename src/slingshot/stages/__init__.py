"""The stages. Each module has ``run(ctx: StageContext) -> StageResult`` and reads top to
bottom like one training script; the launcher, tracking and checkpoint machinery live
elsewhere (slingshot.launch, slingshot.tracking, slingshot.checkpoint, slingshot.loop)."""
