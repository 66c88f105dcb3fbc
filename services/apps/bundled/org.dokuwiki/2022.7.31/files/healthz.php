<?php
// Homeport health check: PHP answers and the wiki's data folder is writable.
header('Content-Type: text/plain');
if (is_dir('/app/data/data/pages') && is_writable('/app/data/data/pages')) {
    echo "ok\n";
} else {
    http_response_code(503);
    echo "/app/data/data/pages is not writable\n";
}
