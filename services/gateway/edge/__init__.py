"""The edge: nginx configuration rendered from a model, checked, applied; the nginx process."""

from services.gateway.edge.nginx import Nginx
from services.gateway.edge.render import EdgeModel, Vhost, render
from services.gateway.errors import EdgeError

__all__ = ["EdgeError", "EdgeModel", "Nginx", "Vhost", "render"]
