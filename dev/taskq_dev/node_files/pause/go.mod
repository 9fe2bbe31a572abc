module taskq.local/pause

go 1.22
