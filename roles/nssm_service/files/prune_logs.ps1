# Delete rotated logs of NSSM services older than -Days. Run daily as SYSTEM by a scheduled task.
# NSSM rotates <name>.log to <name>-<yyyyMMddTHHmmss.fff>.log but never deletes; nginx's access and error
# logs are rotated to the same pattern. Only files of that pattern in the services' log directories
# (read from each NSSM service's AppStdout/AppStderr) are touched.
[CmdletBinding(SupportsShouldProcess)]
param([Parameter(Mandatory)][int]$Days)
$ErrorActionPreference = 'Stop'
$cutoff = (Get-Date).AddDays(-$Days)
$rotated = '-\d{8}T\d{6}\.\d{3}\.log$'

$dirs = @(Get-ChildItem -LiteralPath 'HKLM:\SYSTEM\CurrentControlSet\Services' |
        ForEach-Object {
            # A service key this account cannot read is skipped, not fatal.
            try {
                $params = Join-Path $_.PSPath 'Parameters'
                if (Test-Path -LiteralPath $params) {
                    $p = Get-ItemProperty -LiteralPath $params
                    foreach ($file in @($p.AppStdout, $p.AppStderr)) {
                        if ($file) { Split-Path -Parent ([Environment]::ExpandEnvironmentVariables($file)) }
                    }
                }
            }
            catch { Write-Warning "skipped $($_.Exception.Message)" }
        } | Sort-Object -Unique)

foreach ($dir in $dirs) {
    if (-not (Test-Path -LiteralPath $dir)) { continue }
    Get-ChildItem -LiteralPath $dir -File |
        Where-Object { $_.Name -match $rotated -and $_.LastWriteTime -lt $cutoff } |
        ForEach-Object {
            # A file in use is skipped (and retried tomorrow), not fatal for the rest.
            try {
                if ($PSCmdlet.ShouldProcess($_.FullName, 'Delete rotated log')) { Remove-Item -LiteralPath $_.FullName }
            }
            catch { Write-Warning "kept $($_.Exception.Message)" }
        }
}
