from fastapi import Depends, FastAPI

import polar_metering as metering
from polar_metering.integrations.fastapi import install, metering_lifespan, usage_limit

metering.init(plans=[metering.Plan("free", credits={"api_requests": 1000})])
app = FastAPI(lifespan=metering_lifespan())
install(app, resolver=lambda req: req.headers.get("x-org-id") or req.headers.get("x-user-id"))


@app.post("/api/process", dependencies=[Depends(usage_limit("api_requests"))])
async def process() -> dict[str, bool]:
    # Over the limit: 429 {"error": "Usage limit exceeded", ...status}; the middleware tracks api.request.
    return {"success": True}
